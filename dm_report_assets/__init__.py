"""The HTML report's stylesheet and script (data files of `dm_report`), installed with it."""
