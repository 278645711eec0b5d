"""The roll report: JSON, CSV and a PNG defect map per roll, made from the event spool alone."""
