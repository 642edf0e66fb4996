"""MONAI Label app serving this project's SegResMamba bundles to 3D Slicer (and any MONAI Label client).

    monailabel start_server --app apps/segresmamba --studies <folder of images | DICOMweb URL> \
        [--conf models spleen_ct_segresmamba,btcv_ct_segresmamba] [--conf bundles <folder>]

Per bundle: an infer task (the bundle's inference.json), a train task (its train.json on the saved labels), Dice
scoring against the saved labels, TTA-uncertainty scoring and an active-learning strategy built on it. Nothing is
downloaded: bundles come from this repository's ``bundles/`` (or ``--conf bundles``), no Model Zoo, no SAM2.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import custom_nets
from lib import viewer
from lib.activelearning import MostUncertain
from lib.bundles import find_bundles
from lib.datastore import CheckedDICOMWebDatastore, CheckedLocalDatastore, checked_id
from lib.infers import BundleSegmentation
from lib.modality import check_modality
from lib.scoring import ModelDice, TTAUncertainty
from lib.trainers import BundleFineTune

logger = logging.getLogger(__name__)

REPOSITORY_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


class SegResMambaApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        names = [name.strip() for name in conf["models"].split(",") if name.strip()] if conf.get("models") else None
        self.bundles = find_bundles(conf.get("bundles", REPOSITORY_BUNDLES), names)
        if not self.bundles:
            raise ValueError(f"no bundles found in {conf.get('bundles', REPOSITORY_BUNDLES)}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SegResMamba",
            description="SegResMamba (CNN + tri-oriented Mamba) bundles: segmentation, fine-tuning from annotations, "
            "active learning",
            version=custom_nets.__version__,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/")
            return CheckedDICOMWebDatastore.for_url(self.studies)
        return CheckedLocalDatastore(self.studies, extensions=("*.nii.gz", "*.nii", "*.nrrd"), auto_reload=True)

    def init_infers(self):
        return {name: BundleSegmentation(bundle) for name, bundle in self.bundles.items()}

    def init_trainers(self):
        return {name: BundleFineTune(bundle, self.conf) for name, bundle in self.bundles.items()}

    def init_strategies(self):
        strategies = {"random": Random(), "first": First()}
        strategies.update({f"tta_uncertainty_{name}": MostUncertain(name) for name in self.bundles})
        return strategies

    def init_scoring_methods(self):
        methods = {}
        for name, infer in self._infers.items():
            methods[f"dice_{name}"] = ModelDice(infer)
            methods[f"tta_uncertainty_{name}"] = TTAUncertainty(infer)
        return methods

    def on_init_complete(self):
        from monailabel.app import app as server  # in the server process only: the FastAPI application it runs

        viewer.install(server, viewer.PacsProxy.from_settings(self.studies))  # OHIF at /ohif/, its DICOMweb proxy
        super().on_init_complete()

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has {sorted(self._infers)}")
        image = request.get("image")
        # MONAI Label passes an uploaded file as its temporary path; anything else must be an id of the datastore.
        if isinstance(image, str) and not Path(image).resolve().is_relative_to(Path(tempfile.gettempdir()).resolve()):
            checked_id(image)
            if not (datastore or self.datastore()).get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
            check_modality(model, self.bundles[model].metadata, datastore or self.datastore(), image)
        return super().infer(request, datastore)

    def train(self, request):
        model = request.get("model")
        if model not in self._trainers:
            raise ValueError(f"unknown model {model!r}; this server trains {sorted(self._trainers)}")
        return super().train(request)
