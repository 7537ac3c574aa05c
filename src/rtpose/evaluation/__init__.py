"""evaluation stage of the rtpose data flow."""
