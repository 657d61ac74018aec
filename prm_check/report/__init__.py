"""Reports: atomic JSON/CSV stores, one function per figure, the HTML index."""
