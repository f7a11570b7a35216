"""What people look at: the HTML report, the dashboard, exports, progress and tables."""
