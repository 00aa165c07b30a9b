"""Session state every role shares: the directory, cancellation, registered teams."""
