"""pipelines stage of the rtpose data flow."""
