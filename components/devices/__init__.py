"""The device pool, one backend per runtime (convert, load, run, time), the exports; see base.py for the interface."""
