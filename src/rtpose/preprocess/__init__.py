"""preprocess stage of the rtpose data flow."""
