"""Stage 5: price what the API reported and record it in metrics and logs."""
