"""The blueprints, one per route family: Outbound Messages, JSON events, admin, health,
the OpenAPI document."""
