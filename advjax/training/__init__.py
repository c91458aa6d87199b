"""Training: the train state, objectives, step factories and the loop that runs them."""
