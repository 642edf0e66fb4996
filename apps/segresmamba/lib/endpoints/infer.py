"""``POST /infer/{model}``: MONAI Label's route, with checked input, a bounded queue and no temporary file left."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.background import BackgroundTasks
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from lib.clicks import take_clicks
from lib.datastore import checked_id
from lib.options import INFER_OPTIONS, parse_json_params, parse_options
from lib.uploads import IMAGE_UPLOAD_SUFFIXES, saved_upload, upload_suffix

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/infer", tags=["Infer"])


def _unsupported(what: str) -> HTTPException:
    return HTTPException(status_code=422, detail=f"{what} is not supported by this app")


def _infer_and_respond(model: str, request: dict, file: UploadFile | None, output, background_tasks) -> object:
    """On a worker thread: save the upload (if any), check it, infer, and build the response."""
    app = app_instance()
    if file is None:
        result = app.infer(request)
    else:
        with saved_upload(file, upload_suffix(file, IMAGE_UPLOAD_SUFFIXES)) as path:
            result = app.infer(request, upload=path)
    try:
        return send_response(app.datastore(), result, output, background_tasks)
    except BaseException:
        if result.get("file"):
            Path(result["file"]).unlink(missing_ok=True)
        raise


@router.post("/{model}", summary=f"{RBAC_USER}Run Inference for supported model")
async def api_run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: Optional[ResultType] = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """Segment a datastore image (``image``: its id) or the image uploaded with this request (``file``).

    Unlike MONAI Label's route: ``image`` is only ever a datastore id (MONAI Label also reads any existing path
    given there or in ``params``); ``params`` is parsed (malformed JSON, unknown options and values out of range are
    HTTP 422); sessions, label inputs and DICOM SEG output are refused (422); the upload is removed however the
    request ends; and the inference runs on the app's bounded queue, off the event loop (503 when full).
    """
    app = app_instance()
    task = app.infer_task(model)
    clicks, rest = take_clicks(parse_json_params(params), getattr(task, "click_labels", None), app.served_labels())
    options = parse_options(rest, INFER_OPTIONS)
    if session_id:
        raise _unsupported("session_id (sessions)")
    if label is not None:
        raise _unsupported("a label input (this app's models segment automatically)")
    if output == ResultType.dicom_seg:
        raise _unsupported("output=dicom_seg (it needs MONAI Label's dcmqi binaries)")
    if file is not None and image:
        raise HTTPException(status_code=422, detail="give either image (a datastore id) or file (an upload), not both")
    if file is None:
        if not image:
            raise HTTPException(status_code=422, detail="give image (an id of the datastore) or upload the image as file")
        checked_id(image)
        if not app.datastore().get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
    request = {**options, **clicks, "model": model, "image": image}
    logger.info(f"Infer request: {request}")
    return await app.inference_queue.run(_infer_and_respond, model, request, file, output, background_tasks)
