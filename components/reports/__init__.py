"""What people read: the night's summary, the stage reports, model cards, figures, tables and intervals as text."""
