"""What RevOps sees: metrics per deal, rep and cohort, the daily digest, and the backtest."""
