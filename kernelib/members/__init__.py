"""Members: load Keras files in every format, build each member's front, check, tabulate.

A member file may be a Keras 3 `.keras` archive, a legacy `.h5` file (both under Keras'
safe mode unless the member is trusted) or a SavedModel folder (wrapped with
`keras.layers.TFSMLayer`; such a member cannot be looked inside, so it joins only the
strategies that need its predictions). `adapt` puts a front in the graph (resize,
grey<->RGB, value scaling to the member's `preprocess` convention), a softmax for a
member that outputs logits, and a fixed reordering of its classes to the dataset's, so
every member takes the dataset's raw input and predicts the dataset's classes in order.

| module | holds |
|---|---|
| `files` | `Member`, `load_member`, `load_keras`, `save_model` |
| `inside` | walking a model's layers, augmentation layers, output kind, `features` |
| `adapting` | `adapt` and the class order (the fronts themselves: `kernelib.fronts`) |
| `checks` | `check_compatible`, `check_outputs`, `as_models`, `member_table` |
| `run` | a run's members: `register`, `preflight`, `load_run_members`, `build_member` |

The names below are the package's API (`from kernelib import members; members.adapt(...)`).
"""

from kernelib.fronts import PREPROCESS, front_layers
from kernelib.members.adapting import OUTPUTS, adapt, class_order, input_shape_of
from kernelib.members.checks import (
    as_models,
    check_compatible,
    check_outputs,
    count_params,
    member_table,
    probe_rows,
)
from kernelib.members.files import (
    Member,
    file_kind,
    load_keras,
    load_member,
    save_member,
    save_model,
)
from kernelib.members.inside import (
    augmentation_layers,
    features,
    final_layer,
    is_augmentation,
    is_opaque,
    named_layers,
    output_kind,
    walk_layers,
    without_augmentation,
)
from kernelib.members.run import (
    build_member,
    from_spec,
    histories,
    load_run_members,
    preflight,
    read_specs,
    register,
    spec,
    to_train,
)

__all__ = [
    "OUTPUTS", "PREPROCESS", "Member", "adapt", "as_models", "augmentation_layers",
    "build_member", "check_compatible", "check_outputs", "class_order", "count_params",
    "features", "file_kind", "final_layer", "from_spec", "front_layers", "histories",
    "input_shape_of", "is_augmentation", "is_opaque", "load_keras", "load_member",
    "load_run_members", "member_table", "named_layers", "output_kind", "preflight",
    "probe_rows", "read_specs", "register", "save_member", "save_model", "spec", "to_train",
    "walk_layers", "without_augmentation",
]
