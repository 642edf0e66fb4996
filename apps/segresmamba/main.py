"""MONAI Label app serving this project's SegResMamba bundles to 3D Slicer (and any MONAI Label client).

    monailabel start_server --app apps/segresmamba --studies <folder of images | DICOMweb URL> --host 127.0.0.1 \
        [--conf models spleen_ct_segresmamba,btcv_ct_segresmamba] [--conf bundles <folder>] \
        [--conf max_voxels 268435456] [--conf infer_workers 1] [--conf infer_queue 4]

Per bundle: an infer task (the bundle's inference.json), a train task (its train.json on the saved labels), Dice
scoring against the saved labels, TTA-uncertainty scoring and an active-learning strategy built on it. Nothing is
downloaded: bundles come from the project's bundles folder (``custom_nets.bundle.bundles_folder()``: the checkout's
``bundles/`` or the installed package's; or ``--conf bundles``), no Model Zoo, no SAM2.

The routes that take untrusted input (infer, train, model upload, datastore uploads, dataset download, logs) are this
app's own (``lib.endpoints``), served in place of MONAI Label's: options are parsed, only datastore ids or the
request's own upload are read, uploads never outlive their request, images are checked from their header before
their voxels are read (``max_voxels``), and inferences run on a bounded queue (``infer_workers`` running,
``infer_queue`` admitted) off the event loop.
"""

from __future__ import annotations

import copy
import logging
import sys

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import custom_nets
from custom_nets.bundle import bundles_folder, find_bundles
from custom_nets.io.header import MAX_VOXELS
from lib import viewer
from lib.activelearning import MostUncertain
from lib.datastore import CheckedDICOMWebDatastore, CheckedLocalDatastore, check_image, checked_id
from lib.exposure import exposure_warning, served_host
from lib.inference_queue import InferenceQueue
from lib.infers import BundleSegmentation, DeepEditSegmentation
from lib.modality import check_modality
from lib.scoring import ModelDice, TTAUncertainty
from lib.trainers import BundleFineTune

logger = logging.getLogger(__name__)

DEFAULT_BUNDLES = bundles_folder()  # $SEGRESMAMBA_BUNDLES, the checkout's bundles/ or the installed ones


class SegResMambaApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        names = [name.strip() for name in conf["models"].split(",") if name.strip()] if conf.get("models") else None
        self.bundles = find_bundles(conf.get("bundles", DEFAULT_BUNDLES), names)
        if not self.bundles:
            raise ValueError(f"no bundles found in {conf.get('bundles', DEFAULT_BUNDLES)}")
        self.max_voxels = int(conf.get("max_voxels", MAX_VOXELS))
        self.inference_queue = InferenceQueue(int(conf.get("infer_workers", 1)), int(conf.get("infer_queue", 4)))
        # the tasks by model, as init_infers and init_trainers make them (MONAI Label keeps its own copies private;
        # no trainers where its settings turn training off)
        self.infer_tasks: dict[str, BundleSegmentation] = {}
        self.train_tasks: dict[str, BundleFineTune] = {}
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
            return CheckedDICOMWebDatastore.for_url(self.studies, self.max_voxels)
        return CheckedLocalDatastore(
            self.studies, extensions=("*.nii.gz", "*.nii", "*.nrrd"), auto_reload=True, max_voxels=self.max_voxels
        )

    def init_infers(self):
        self.infer_tasks = {
            name: DeepEditSegmentation(bundle) if bundle.click_labels else BundleSegmentation(bundle)
            for name, bundle in self.bundles.items()
        }
        return dict(self.infer_tasks)

    def init_trainers(self):
        self.train_tasks = {name: BundleFineTune(bundle, self.conf) for name, bundle in self.bundles.items()}
        return dict(self.train_tasks)

    def init_strategies(self):
        strategies = {"random": Random(), "first": First()}
        strategies.update({strategy.name: strategy for strategy in map(MostUncertain, self.bundles)})
        return strategies

    def init_scoring_methods(self):
        methods = [method(infer) for infer in self.infer_tasks.values() for method in (ModelDice, TTAUncertainty)]
        return {method.name: method for method in methods}

    def on_init_complete(self):
        """In the server process only: serve this app's routes in place of MONAI Label's, and say what an
        unauthenticated server on a network address exposes."""
        from monailabel.app import app as server  # the FastAPI application `monailabel start_server` runs
        from monailabel.config import settings

        from lib.endpoints import install

        install(server, viewer.PacsProxy.from_settings(self.studies))  # OHIF at /ohif/ and its DICOMweb proxy too
        warning = exposure_warning(served_host(sys.argv), settings.MONAI_LABEL_SERVER_PORT, settings.MONAI_LABEL_AUTH_ENABLE)
        if warning:
            logger.warning(warning)
            print(warning, file=sys.stderr, flush=True)
        super().on_init_complete()

    def infer_task(self, model: str) -> BundleSegmentation:
        """The infer task of ``model``; HTTP 404 naming the models if there is none."""
        if model not in self.infer_tasks:
            raise HTTPException(
                status_code=404, detail=f"unknown model {model!r}; this server has {sorted(self.infer_tasks)}"
            )
        return self.infer_tasks[model]

    def served_labels(self) -> set[str]:
        """Every label of every model served (3D Slicer's DeepEdit requests name them all)."""
        return {label for task in self.infer_tasks.values() for label in (task.labels or {})}

    def trainer_names(self) -> list[str]:
        return sorted(self.train_tasks)

    def infer(self, request, datastore=None, upload: str | None = None):
        """Run ``request["model"]`` on a datastore image (``request["image"]``: its id) or on ``upload``, the image
        file uploaded with this very request (only this app's infer route passes one).

        Replaces ``MONAILabelApp.infer``, which reads ``request["image"]`` as a file whenever a file of that name
        exists (any absolute path, or one relative to the server's working folder). Images are checked before
        inference: within ``max_voxels`` from the header, no NaN or infinite voxel (HTTP 422).

        Returns:
            ``{"label", "tag", "file", "params"}`` as MONAI Label's endpoints expect.
        """
        task = self.infer_task(request.get("model"))
        datastore = datastore or self.datastore()
        request = copy.deepcopy(request)
        request["description"] = task.description
        image_id = None
        if upload is not None:
            request["image"] = upload
            check_image(upload, "uploaded image", self.max_voxels, finite=True)
        else:
            image_id = checked_id(request.get("image"))
            uri = datastore.get_image_uri(image_id)
            if not uri:
                raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")
            check_modality(task.bundle.name, task.bundle.metadata, datastore, image_id)
            check_image(uri, f"image {image_id!r}", self.max_voxels, finite=True)
            request["image"] = uri
        result_file, result_json = task(request)
        label = result_file
        if image_id and result_file and request.get("save_label"):
            tag = checked_id(request.get("label_tag", "original"), "label tag")
            label = datastore.save_label(image_id, result_file, tag, {"model": task.bundle.name, "params": result_json})
        return {"label": label, "tag": request.get("label_tag", "original"), "file": result_file, "params": result_json}

    def train(self, request):
        model = request.get("model")
        if model not in self.train_tasks:
            raise ValueError(f"unknown model {model!r}; this server trains {sorted(self.train_tasks)}")
        return super().train(request)
