"""The rules that decide: validate's gates, and whether a registered version becomes the champion."""
