"""Active learning: the unlabelled image the model is least sure about."""

from __future__ import annotations

import time

from monailabel.interfaces.tasks.strategy import Strategy

from lib.scoring import TTAUncertainty
from lib.scoring.weights_scoring import WeightsScoring


class MostUncertain(Strategy):
    """Orders unlabelled images by a model's uncertainty score (the records ``scoring`` stores), highest first;
    images not scored yet come last. An image served in the last ``hold`` seconds is skipped while others remain, so
    two annotators asking at once get different images. Served under the scoring method's own name
    (``tta_uncertainty_<model>``).

    Args:
        model: the model whose scores order the images.
        hold: seconds an image served is held back.
        scoring: the scoring method whose records are read.
    """

    def __init__(self, model: str, hold: float = 600.0, scoring: type[WeightsScoring] = TTAUncertainty):
        self.model, self.hold, self.scoring = model, hold, scoring
        self.name = scoring.method_name(model)
        super().__init__(f"Most uncertain unlabelled image for {model} (run scoring {self.name} first)")

    def ranked(self, datastore) -> list[tuple[str, float | None]]:
        ranked = []
        for image_id in datastore.get_unlabeled_images():
            record = datastore.get_image_info(image_id).get(self.scoring.key, {}).get(self.model, {})
            ranked.append((image_id, record.get(self.scoring.headline)))
        return sorted(ranked, key=lambda item: (item[1] is None, -(item[1] or 0.0), item[0]))

    def __call__(self, request, datastore):
        ranked = self.ranked(datastore)
        if not ranked:
            return None
        now = time.time()
        strategy = request.get("strategy")

        def served_recently(image_id: str) -> bool:
            served = datastore.get_image_info(image_id).get("strategy", {}).get(strategy, {}).get("ts", 0)
            return now - served < self.hold

        image_id, score = next(((i, s) for i, s in ranked if not served_recently(i)), ranked[0])
        return {"id": image_id, self.scoring.key: score}
