"""Statistics over users: means and paired differences with bootstrap intervals."""
