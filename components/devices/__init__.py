"""The device pool and one backend per runtime (convert, load, run, time); see base.py for the interface."""
