"""Every version is also an MLflow model, in the same folder as its bundle.

Beside the bundle's files the training job writes an `MLmodel` whose pyfunc flavor names a loader
module (`code/shipyard_onnx_pyfunc.py`, the source of `shipyard.bundle.onnx_pyfunc`) and no data
folder: MLflow hands the loader the version's own folder, so it opens the same `model.onnx` and
`input_schema.json` as the Serve app, under the same manifest. With it come the signature (the raw
input columns, strings for categories and doubles for numbers, every one optional; the outputs),
an input example from the holdout, and the environment (ONNX Runtime, NumPy, pandas). No pickle is
written or read: `mlflow.pyfunc.load_model("models:/<name>@<alias>")` imports the loader's code
and the loader reads ONNX and JSON. A version registered before this adds them later with
`shipyard mlflow-model NAME VERSION` (`shipyard.registry.add_mlflow_model`).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from shipyard.bundle.schema import InputSchema

LOADER = "shipyard_onnx_pyfunc"
LOADER_SOURCE = Path(__file__).with_name("onnx_pyfunc.py")
EXAMPLE_ROWS = 5


def _label_type(classes: tuple[Any, ...]) -> str:
    first = classes[0] if classes else ""
    if isinstance(first, bool):
        return "boolean"
    if isinstance(first, int):
        return "long"
    return "double" if isinstance(first, float) else "string"


def signature(schema: InputSchema) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [
        ColSpec("double" if f.kind == "numeric" else "string", f.name, required=False)
        for f in schema.features
    ]
    if schema.task == "regression":
        outputs = [ColSpec("double", "prediction")]
    else:
        outputs = [ColSpec(_label_type(schema.classes), "label")]
        outputs += [ColSpec("double", f"probability_{c}") for c in schema.classes]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def example_of(schema: InputSchema, holdout: pd.DataFrame) -> pd.DataFrame:
    """A few raw holdout records, the features only, as a client would send them."""
    frame = holdout[schema.names].head(EXAMPLE_ROWS).copy()
    for f in schema.features:
        if f.kind == "categorical":
            frame[f.name] = frame[f.name].astype("string").astype(object)
            frame.loc[frame[f.name].isna(), f.name] = None
    return frame.reset_index(drop=True)


def mlflow_files(schema: InputSchema, example: pd.DataFrame | None) -> dict[str, bytes]:
    """MLmodel, the loader's code, the input example (None: none) and the environment, as
    bundle files."""
    import mlflow.pyfunc
    import numpy
    import onnxruntime
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    requirements = "".join(
        f"{name}=={version}\n"
        for name, version in (("onnxruntime", onnxruntime.__version__),
                              ("numpy", numpy.__version__), ("pandas", pd.__version__))
    )  # fmt: skip
    env = (f"python: {platform.python_version()}\nbuild_dependencies:\n- pip\n"
           "dependencies:\n- -r requirements.txt\n")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(signature=signature(schema))
        if example is not None:
            _save_example(model, example, tmp)
        mlflow.pyfunc.add_to_model(model, loader_module=LOADER, code="code",
                                   python_env="python_env.yaml")  # fmt: skip
        model.save(os.path.join(tmp, "MLmodel"))
        root = Path(tmp)
        files = {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
    files[f"code/{LOADER}.py"] = LOADER_SOURCE.read_bytes()
    files["requirements.txt"] = requirements.encode()
    files["python_env.yaml"] = env.encode()
    return files
