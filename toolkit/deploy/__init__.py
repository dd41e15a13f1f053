"""Results that leave ktk: the saved model's input schema (labels.json), the serving model, predictions and
exports. See docs/ARCHITECTURE.md."""
