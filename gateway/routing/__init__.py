"""The map in force: routes.yaml schema and loader, name resolution, presets, live state, discovery, catalog."""
