"""Model analysis and blessing: metrics, slices, fairness gaps, feature dependence, baseline."""
