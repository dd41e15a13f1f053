"""Reading results back: compare tables, plots and sweep reports."""
