"""What pyproject.toml cannot say: install ``sail_vision_mmcv_lite.pth`` into site-packages.

The .pth file makes Python call ``sail_vision_mmcv_lite.install()`` at start-up, so a program whose
first import is mmseg works on mmcv-lite (see sail_vision_mmcv_lite.py). Everything else about the
package is declared in pyproject.toml.
"""

import os

from setuptools import Command, setup
from setuptools.command.build import build

PTH_NAME = "sail_vision_mmcv_lite.pth"
# One line that site.py executes; it does nothing if the module has gone (a half-removed install).
PTH_LINE = ("import importlib.util as u; "
            "u.find_spec('sail_vision_mmcv_lite') and __import__('sail_vision_mmcv_lite').install()\n")


class build_pth(Command):
    """Write sail_vision_mmcv_lite.pth at the top level of the wheel (site-packages once installed)."""

    description = "write sail_vision_mmcv_lite.pth into the wheel"
    user_options = []
    editable_mode = False  # set to True by setuptools' editable_wheel (pip install -e)

    def initialize_options(self):
        self.build_lib = None

    def finalize_options(self):
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def run(self):
        # A regular wheel is made from build_lib. An editable wheel is made from the folder that the
        # install command's install_lib points at (build_lib is a temporary folder it leaves out).
        target = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, PTH_NAME), "w", encoding="utf-8") as f:
            f.write(PTH_LINE)

    def get_outputs(self):
        return [os.path.join(self.build_lib, PTH_NAME)]


class build_with_pth(build):
    sub_commands = build.sub_commands + [("build_pth", None)]


setup(cmdclass={"build": build_with_pth, "build_pth": build_pth})
