"""decode stage of the rtpose data flow."""
