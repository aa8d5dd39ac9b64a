"""The code of every registered gpo model version: MLflow 3's "models from code".

`gpo/tracking.py` logs this file as the pyfunc's `python_model` (a path, not an object) with the round's
diffusers folder (config JSON + safetensors weights) as the artifact `pipeline`. MLflow copies this file
into the model and runs it when the model is loaded: the `set_model` call at the bottom hands MLflow the
model object. Nothing of the model is a pickle, so loading it unpickles nothing (it loads with
`MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`):

    model = mlflow.pyfunc.load_model("models:/gpo-embedded@champion")
    images = model.predict(["three red circles", '"CAT" on a sign'])          # one PIL image a prompt
    images = model.predict(["three red circles"], params={"seed": 7, "steps": 20})

Input: the prompts, `list[str]` (MLflow infers the input schema from the type hint and checks inputs
against it; a one-column DataFrame of prompts works too). `params`, all optional (their schema is in the
logged signature): `seed` (the first image's seed; the next prompts get seed + 1, ...), `steps`,
`guidance_scale`, `solver`, `precision`; the defaults are the evaluation's (gpo.tracking.predict_defaults).
"""

from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.pyfunc import PythonModel


class GpoPipeline(PythonModel):
    """A gpo pipeline folder (embedded, SD, SDXL or SD3: gpo.model.adapters.load_any) behind pyfunc predict."""

    def load_context(self, context) -> None:
        from gpo.model.adapters import load_any
        from gpo.tracking import MODEL_ARTIFACT

        self.pipe = load_any(Path(context.artifacts[MODEL_ARTIFACT]))

    def predict(self, context, model_input: list[str], params: Optional[dict[str, Any]] = None):
        """One PIL image per prompt."""
        from gpo.generate import generate
        from gpo.tracking import predict_defaults

        prompts = [str(p) for p in model_input]
        p = {**predict_defaults(), **(params or {})}
        seeds = [int(p["seed"]) + i for i in range(len(prompts))]
        return generate(self.pipe, prompts, seeds, steps=int(p["steps"]), guidance_scale=float(p["guidance_scale"]),
                        batch_size=32, progress=False, solver=str(p["solver"]), precision=str(p["precision"]))


mlflow.models.set_model(GpoPipeline())
