from .model_dice import ModelDice
from .tta_uncertainty import TTAUncertainty

__all__ = ["ModelDice", "TTAUncertainty"]
