"""Teacher clients: one async `sample(request)` per API, plus an in-process local model.

Public surface: `TeacherRequest`, `TeacherSample`, `Teacher`, and `build_teacher(spec, ...)`.
Nothing here knows about training, tensors or the cache.
"""

from providers.base import Message, Teacher, TeacherRequest, TeacherSample

__all__ = ["Message", "Teacher", "TeacherRequest", "TeacherSample"]
