"""Files in and out: CT and radiograph readers (with their checks), the CT on the model grid, volume
writers, the output policy (never destroy a user's files), montages and the sample data. Image
transforms of the model views live in axonct.transforms; atomic writing in axonct.atomic."""
