"""netctl: the operator's command line."""
