"""Plotly figures in one house style, drawn from results-store tables.

Every figure uses the same template, fonts and a fixed colour per engine, scheme and method
(``COLORS``) so a reader can follow "TVM" or "block_punched" from notebook to notebook.
:func:`save_figure` writes interactive HTML always and a PNG when kaleido finds a Chromium
(Debian's ``chromium`` package); the PNG step is skipped with a one-line note otherwise.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from npas_lab import paths

__all__ = [
    "COLORS",
    "engine_latency_figure",
    "mask_gallery_figure",
    "operator_deltas_figure",
    "save_figure",
    "style",
    "training_curve_figure",
]

#: Fixed colour per engine, scheme and pruning method, shared by every figure.
COLORS: dict[str, str] = {
    # inference engines
    "tvm": "#1f77b4",
    "tvm-rpc": "#6baed6",
    "pytorch": "#ee4c2c",
    "onnxruntime": "#7f7f7f",
    "mnn": "#2ca02c",
    # sparsity schemes
    "dense": "#4d4d4d",
    "unstructured": "#9467bd",
    "filter": "#8c564b",
    "channel": "#bcbd22",
    "column": "#17becf",
    "pattern": "#e377c2",
    "block": "#ff7f0e",
    "block_punched": "#d62728",
    # pruning algorithms
    "oneshot": "#aec7e8",
    "gradual": "#ffbb78",
    "admm": "#98df8a",
    "group_lasso": "#c5b0d5",
}

_FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def color(name: str) -> str:
    """Return the house colour for an engine, scheme or method (grey for unknown names)."""
    return COLORS.get(name, "#999999")


def style(
    fig: go.Figure, *, title: str | None = None, x: str | None = None, y: str | None = None
) -> go.Figure:
    """Apply the house style (template, font, grid, labels) to ``fig`` and return it."""
    fig.update_layout(
        template="plotly_white",
        font=_FONT,
        title=title,
        margin=dict(l=60, r=20, t=60 if title else 20, b=50),
        legend=dict(orientation="h", y=-0.2),
    )
    if x:
        fig.update_xaxes(title_text=x)
    if y:
        fig.update_yaxes(title_text=y)
    fig.update_xaxes(showgrid=True, gridcolor="#eeeeee")
    fig.update_yaxes(showgrid=True, gridcolor="#eeeeee")
    return fig


def engine_latency_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bar chart of median latency per engine, with the spread as error bars.

    Parameters
    ----------
    df
        Rows of measurements with columns ``engine``, ``latency_ms`` and ``spread_ms`` and
        optionally ``model`` (one bar group per model).
    """
    missing = {"engine", "latency_ms"} - set(df.columns)
    if missing:
        raise ValueError(f"engine_latency_figure needs columns {sorted(missing)} in df")
    fig = go.Figure()
    models = df["model"] if "model" in df else pd.Series(["model"] * len(df), index=df.index)
    for engine, rows in df.groupby("engine", sort=False):
        spread = rows["spread_ms"] if "spread_ms" in rows else None
        fig.add_bar(
            name=str(engine),
            x=models.loc[rows.index],
            y=rows["latency_ms"],
            error_y=dict(type="data", array=spread, visible=spread is not None),
            marker_color=color(str(engine)),
            hovertemplate="%{x}<br>%{y:.3f} ms<extra>" + str(engine) + "</extra>",
        )
    fig.update_layout(barmode="group")
    return style(
        fig, title=title or "Latency per engine (median, spread as error bar)", y="latency (ms)"
    )


def training_curve_figure(
    history: list[dict[str, float]] | pd.DataFrame, *, title: str | None = None
) -> go.Figure:
    """Line chart of train/validation accuracy per epoch from a ``fit`` history."""
    df = pd.DataFrame(history)
    fig = go.Figure()
    for column, dash in (("train_accuracy", "dot"), ("val_accuracy", "solid")):
        if column in df:
            fig.add_scatter(
                x=df["epoch"],
                y=df[column],
                name=column.replace("_", " "),
                mode="lines+markers",
                line=dict(dash=dash, color=color("dense")),
            )
    return style(fig, title=title or "Training curve", x="epoch", y="accuracy")


def _png_available() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def save_figure(
    fig: go.Figure, name: str, *, folder: Path | None = None, png: bool = True
) -> dict[str, Path]:
    """Save ``fig`` as HTML (always) and PNG (when a Chromium is installed for kaleido).

    Parameters
    ----------
    fig
        The figure.
    name
        File stem, e.g. ``"quickstart_latency"``.
    folder
        Where to write; by default ``$NPAS_LAB_FIGURES_DIR`` (set by the main job to its report
        folder) or ``results/figures``.
    png
        Also try a static PNG.

    Returns
    -------
    dict
        ``{"html": path, "png": path}`` for what was written.
    """
    if folder is None:
        env = os.environ.get("NPAS_LAB_FIGURES_DIR")
        folder = Path(env) if env else paths.results_dir() / "figures"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"html": folder / f"{name}.html"}
    # "directory": one plotly.min.js beside the pages, so they open offline.
    fig.write_html(written["html"], include_plotlyjs="directory")
    if png:
        if not _png_available():
            warnings.warn(
                f"{name}.png not written: kaleido needs Chromium (apt-get install "
                "chromium); the HTML version was saved",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            try:
                fig.write_image(folder / f"{name}.png", width=900, height=520, scale=2)
                written["png"] = folder / f"{name}.png"
            except Exception as err:  # kaleido raises several types when the browser fails
                warnings.warn(
                    f"{name}.png not written ({type(err).__name__}: {err}); the HTML "
                    "version was saved",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return written


def mask_gallery_figure(
    weight: object,
    masks: dict[str, object],
    *,
    title: str | None = None,
    filters: int = 16,
    channels: int = 8,
    cols: int = 2,
) -> go.Figure:
    """Draw one layer's keep-mask under several schemes side by side, in GEMM form.

    Each subplot is a mask cropped to the first ``filters`` rows (filters) and the first
    ``channels * kh * kw`` columns (kernel positions, channel-major), so blocks, punches,
    patterns and pruned filters are visible as in figures 1 and 3 of the NPAS paper. Kept
    weights are drawn in the scheme's colour (:data:`COLORS`), shaded by magnitude; pruned ones
    are white.

    Parameters
    ----------
    weight
        The layer weight (a tensor or array: ``F x C x kh x kw`` or ``F x C``).
    masks
        ``{scheme: boolean mask of weight's shape}``, one subplot each, in this order.
    title
        Figure title.
    filters, channels
        How much of the layer to show.
    cols
        Subplots per row.
    """
    import numpy as np
    from plotly.subplots import make_subplots

    def as_array(x: object) -> np.ndarray:
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
        return np.asarray(x, dtype=float)

    w = as_array(weight)
    kernel = int(np.prod(w.shape[2:])) if w.ndim == 4 else 1
    rows_shown, cols_shown = min(filters, w.shape[0]), min(channels, w.shape[1]) * kernel
    magnitude = np.abs(w.reshape(w.shape[0], -1))[:rows_shown, :cols_shown]
    # Kept weights span 0.35..1 of the colour so that even the smallest kept one is visible.
    shade = 0.35 + 0.65 * magnitude / max(float(magnitude.max()), 1e-12)
    names = list(masks)
    n_rows = -(-len(names) // cols)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        subplot_titles=names,
        horizontal_spacing=0.04,
        vertical_spacing=0.3 / max(n_rows, 1),
    )
    for i, name in enumerate(names):
        keep = as_array(masks[name]).reshape(w.shape[0], -1)[:rows_shown, :cols_shown] > 0
        fig.add_heatmap(
            z=np.where(keep, shade, 0.0),
            zmin=0.0,
            zmax=1.0,
            colorscale=[[0.0, "#ffffff"], [1.0, color(name)]],
            showscale=False,
            xgap=1,
            ygap=1,
            name=name,
            hovertemplate="filter %{y}<br>column %{x}<extra>" + name + "</extra>",
            row=i // cols + 1,
            col=i % cols + 1,
        )
    style(fig, title=title or "Keep-masks in GEMM form (filters x kernel positions)")
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(height=max(260, 190 * n_rows), showlegend=False)
    return fig


def operator_deltas_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bar charts of what operator replacement changes: accuracy (left) and TVM latency (right).

    One bar group per replaced variant (each rule, all rules), as the change against the original:
    accuracy in percentage points right after replacement (solid) and after the short fine-tune
    (hatched; the original is fine-tuned too), latency in ms with the variant's interquartile
    range as error bar. Hover shows the absolute figures.

    Parameters
    ----------
    df
        Rows of :func:`npas_lab.operators.measure_replacement` (or of the ``operators`` table of
        the results store for one ``run_id``): columns ``variant``, ``accuracy``,
        ``accuracy_delta``, ``accuracy_finetuned``, ``accuracy_finetuned_delta``,
        ``latency_ms``, ``latency_delta_ms``, ``spread_ms`` and ``speedup``, the original first
        or marked by ``variant_kind == "original"``.
    title
        Figure title; default names the model and the original's figures.
    """
    from plotly.subplots import make_subplots

    needed = {"variant", "accuracy", "accuracy_delta", "accuracy_finetuned"}
    needed |= {"accuracy_finetuned_delta", "latency_ms", "latency_delta_ms", "spread_ms", "speedup"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"operator_deltas_figure needs columns {sorted(missing)} in df")
    if "variant_kind" in df:
        is_original = df["variant_kind"] == "original"
    else:
        is_original = pd.Series(df.index == df.index[0], index=df.index)
    original, rows = df[is_original], df[~is_original]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("accuracy change (percentage points)", "TVM latency change (ms)"),
        horizontal_spacing=0.12,
    )
    for column, absolute, name, pattern in (
        ("accuracy_delta", "accuracy", "accuracy, no fine-tune", ""),
        ("accuracy_finetuned_delta", "accuracy_finetuned", "accuracy after fine-tune", "/"),
    ):
        fig.add_bar(
            x=rows["variant"],
            y=rows[column] * 100,
            customdata=rows[absolute] * 100,
            name=name,
            marker=dict(color=color("dense"), pattern_shape=pattern),
            hovertemplate="%{x}: %{y:+.2f} pp (%{customdata:.2f}%)<extra>" + name + "</extra>",
            row=1,
            col=1,
        )
    fig.add_bar(
        x=rows["variant"],
        y=rows["latency_delta_ms"],
        error_y=dict(type="data", array=rows["spread_ms"], visible=True),
        customdata=rows[["latency_ms", "speedup"]].to_numpy(),
        name="TVM latency",
        marker_color=color("tvm"),
        hovertemplate="%{x}: %{y:+.3f} ms (%{customdata[0]:.3f} ms, %{customdata[1]:.2f}x)"
        "<extra>TVM latency</extra>",
        row=1,
        col=2,
    )
    fig.add_hline(y=0, line_color="#999999", line_width=1)
    if title is None:
        model = str(df["model"].iloc[0]) if "model" in df else "model"
        title = f"Operator replacement on {model}: change against the original"
        if len(original):
            first = original.iloc[0]
            title += f" ({first['accuracy']:.1%}, {first['latency_ms']:.2f} ms)"
    fig.update_layout(barmode="group")
    style(fig, title=title)
    fig.update_yaxes(title_text="percentage points", row=1, col=1)
    fig.update_yaxes(title_text="ms", row=1, col=2)
    return fig
