"""Analysis: sweep summaries, their statistics and plots."""
