"""Evaluation: Ray Serve endpoints for the policy and the judge (serve), PolyAudio-Bench (bench), baseline
protocols (baselines), MMAU-Pro / MMAU (mmau), judge-human agreement (agreement), request validation (validate),
adapter merging (merge)."""
