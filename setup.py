from setuptools import setup

# Metadata lives in setup.cfg; this file serves `pip install` of the Python code.
setup()
