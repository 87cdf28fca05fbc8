"""Development on one machine: the `crmhook dev` runner, an embedded Redis, the sandbox
ChiliPiper and the bundled sample message."""
