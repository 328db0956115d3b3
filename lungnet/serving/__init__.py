"""SavedModel export for TF Serving, with the training preprocessing inside the serving signature."""
