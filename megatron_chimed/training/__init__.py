"""The training loop all stages share; see stage.py for the plug-in interface."""
