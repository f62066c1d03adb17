"""The command lines: every parser and entry point (`isd ...`, the original scripts' flags), the demo and the
multi-GPU self-launch. Nothing below this package imports it; its errors come from the engine naming settings by
config key, and each command here shows them as its own flags."""
