"""Click-guided (DeepEdit) segmentation: clicks checked and turned into MONAI's DeepEdit guidance, and the clicks a
standard NoC protocol would place. The guidance signal itself, the click simulation during training and its
interaction loop are MONAI's (``monai.apps.deepedit``)."""

from .clicks import ClickError, ClicksToGuidanced, LabelNamesd, parse_clicks
from .noc import next_click
from .prompts import PromptAnyStructured

__all__ = ["ClickError", "ClicksToGuidanced", "LabelNamesd", "PromptAnyStructured", "next_click", "parse_clicks"]
