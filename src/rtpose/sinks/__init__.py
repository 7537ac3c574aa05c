"""sinks stage of the rtpose data flow."""
