"""What tuner fetches from outside: image datasets and the frozen base's weights.

Owns scanning, checking and downloading dataset folders (:mod:`.datasets`,
which imports TensorFlow only inside ``load_split``) and checking or
downloading weights files (:mod:`.weights`). It may import
:mod:`tuner.recipes`, :mod:`tuner.space`, :mod:`tuner.common` and
:mod:`tuner.errors`.
"""
