"""aacn.viz: figures drawn from run records (matplotlib, Agg canvas, no display needed).

* :mod:`aacn.viz.curves` — learning curves and accuracy against parameter count;
* :mod:`aacn.viz.attention_maps` — a trained attention layer's weights over a test image (``aacn
  attention-maps``).
"""
