"""The annotation loop: choose what to label next (select), with the model's pre-annotations."""
