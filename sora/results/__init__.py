"""Records -> DataFrames -> the paper's tables and rank plots. Notebooks call only this package."""

from sora.results.load import curve_frame, load_records, rank_frame
from sora.results.plots import plot_rank_heatmaps, plot_rank_over_training, plot_sparsify_curves
from sora.results.tables import cost_table, significance, table1

__all__ = ["load_records", "rank_frame", "table1", "cost_table", "significance", "plot_rank_heatmaps",
           "plot_rank_over_training", "plot_sparsify_curves", "curve_frame"]
