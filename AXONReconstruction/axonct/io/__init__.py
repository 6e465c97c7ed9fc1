"""Files in and out: CT and radiograph readers (with their checks), the model grid and model views,
volume writers, the output policy (never destroy a user's files), montages and the sample data."""
