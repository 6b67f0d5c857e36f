"""eeray."""
