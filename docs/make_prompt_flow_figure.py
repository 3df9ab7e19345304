"""Draws docs/prompt_flow.png: the token sequence through the blocks under Gated Prompt Tuning.

Run: python docs/make_prompt_flow_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

COLORS = {"prefix": "#4c72b0", "prompt": "#dd8452", "patch": "#8c8c8c"}


def sequence(ax, x, y, with_prompts, label=None):
    """Draw one token sequence as a column of squares at (x, y)."""
    kinds = ["prefix"] + (["prompt"] * 3 if with_prompts else []) + ["patch"] * 5
    for i, kind in enumerate(kinds):
        ax.add_patch(plt.Rectangle((x, y - i * 0.32), 0.28, 0.28, color=COLORS[kind]))
    if label:
        ax.text(x + 0.14, y + 0.45, label, ha="center", fontsize=8)


def block(ax, x, text, sub):
    ax.add_patch(FancyBboxPatch((x, 0.2), 0.9, 2.6, boxstyle="round,pad=0.05", fc="#f2f2f2", ec="black"))
    ax.text(x + 0.45, 2.45, text, ha="center", fontsize=9, weight="bold")
    ax.text(x + 0.45, 0.5, sub, ha="center", fontsize=6, va="center")


fig, ax = plt.subplots(figsize=(12, 3.6))
ax.set_xlim(-0.5, 13.2)
ax.set_ylim(-0.3, 3.4)
ax.axis("off")

sequence(ax, 0.0, 2.6, False, "embeddings")
block(ax, 0.7, "block 0..s-1", "unchanged")
sequence(ax, 1.9, 2.6, False)
block(ax, 2.5, "block s", "insert Dropout(P)\nafter prefix\ngate g_s, temp tau_s")
sequence(ax, 3.7, 2.6, True)
block(ax, 4.3, "block l", "Z_P = g_l Block(X)_P\n+ (1-g_l) Z_P\ntemp tau_l")
sequence(ax, 5.5, 2.6, True)
block(ax, 6.1, "block e", "no gate, temp tau_e\nremove prompts")
sequence(ax, 7.3, 2.6, False)
ax.add_patch(FancyBboxPatch((7.9, 1.0), 1.6, 1.2, boxstyle="round,pad=0.05", fc="#e8f0fe", ec="black"))
ax.text(8.7, 1.6, "final norm, pooler,\nhead, hidden_states\n(prompt-free)", ha="center", va="center", fontsize=8)
for x0, x1 in [(0.3, 0.7), (1.6, 1.9), (2.2, 2.5), (3.4, 3.7), (4.0, 4.3), (5.2, 5.5), (5.8, 6.1), (7.0, 7.3), (7.6, 7.9)]:
    ax.annotate("", xy=(x1, 1.5), xytext=(x0, 1.5), arrowprops=dict(arrowstyle="->", lw=0.8))
for i, (kind, color) in enumerate(COLORS.items()):
    ax.add_patch(plt.Rectangle((10.2, 2.4 - i * 0.45), 0.28, 0.28, color=color))
    ax.text(10.6, 2.54 - i * 0.45, {"prefix": "prefix (CLS, registers, ...)", "prompt": "prompt tokens",
                                    "patch": "patch tokens"}[kind], va="center", fontsize=8)
ax.text(10.2, 0.6, "attention in every prompted block:\nsoftmax(QK^T / (sqrt(d) tau_l)),\n"
        "as q_proj output / tau_l (SDPA kept)", fontsize=8)
fig.tight_layout()
out = Path(__file__).with_name("prompt_flow.png")
fig.savefig(out, dpi=110)
print(out)
