"""Old name of engine.ray.input_list (the backfill's list of input videos; "manifest" in vmatch is
the index's commit file, engine.index.manifest). Kept so existing imports work."""
from engine.ray.input_list import (PATH_COLUMNS, VIDEO_EXTENSIONS, InputListError, ManifestError,  # noqa: F401
                                   iter_inputs, read_input_list, read_manifest, walk_videos)

__all__ = ["PATH_COLUMNS", "VIDEO_EXTENSIONS", "InputListError", "ManifestError", "iter_inputs",
           "read_input_list", "read_manifest", "walk_videos"]
