"""crmhook's benchmark."""
