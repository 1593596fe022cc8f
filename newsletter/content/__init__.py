"""The issue format: YAML source with positions, the model, validation, the Markdown subset."""
