"""The parts of Kubernetes objects the operator builds, as ``TypedDict``s (pure: standard library only).

The shapes are those of the Kubernetes API (batch/v1 ``Job``, core/v1 ``PodSpec``, ``Container``, ``EnvVar``,
``VolumeMount``, ``Volume``, ``SecurityContext``, meta/v1 ``ObjectMeta``, ``OwnerReference``), narrowed to the fields
:mod:`schemagate.core.jobs` writes; the API reference is https://kubernetes.io/docs/reference/kubernetes-api/. Parts
the user gives as-is in the spec (a volume source, ``resources``, tolerations, ``spec.rehearsal.job.env``) stay
plain mappings: they are passed through, never built here.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, cast

from schemagate.core.model import SecretKeySelector

UserObject = dict[str, Any]  # a part of the spec passed through to the API as the user wrote it


class EnvVarSource(TypedDict):
    """core/v1 ``EnvVarSource``: only ``secretKeyRef`` (credentials never appear as literal values)."""

    secretKeyRef: SecretKeySelector


class _EnvVarName(TypedDict):
    name: str


class EnvVar(_EnvVarName, total=False):
    """core/v1 ``EnvVar``: ``name`` with a literal ``value`` or a ``valueFrom`` Secret key."""

    value: str
    valueFrom: EnvVarSource


class _VolumeMountRequired(TypedDict):
    name: str
    mountPath: str


class VolumeMount(_VolumeMountRequired, total=False):
    """core/v1 ``VolumeMount``."""

    subPath: str
    readOnly: bool


class EmptyDirVolumeSource(TypedDict, total=False):
    """core/v1 ``EmptyDirVolumeSource``: ``medium: Memory`` is a tmpfs bounded by ``sizeLimit`` (a quantity)."""

    medium: str
    sizeLimit: str


class _VolumeName(TypedDict):
    name: str


class Volume(_VolumeName, total=False):
    """core/v1 ``Volume``: the ``emptyDir`` volumes the operator adds; ``spec.backup.volume`` (any source) is the
    user's and is merged in as written (:func:`user_volume`)."""

    emptyDir: EmptyDirVolumeSource


def user_volume(name: str, source: UserObject) -> Volume:
    """A core/v1 ``Volume`` named ``name`` with the user's volume source (``spec.backup.volume``) as written."""
    return cast(Volume, {"name": name, **source})  # any VolumeSource: the API validates it


class Capabilities(TypedDict):
    """core/v1 ``Capabilities``."""

    drop: list[str]


class _SecurityContextRequired(TypedDict):
    allowPrivilegeEscalation: bool
    capabilities: Capabilities
    runAsNonRoot: bool
    readOnlyRootFilesystem: bool


class SecurityContext(_SecurityContextRequired, total=False):
    """core/v1 ``SecurityContext`` of a container (the Pod Security Standards' ``restricted`` profile)."""

    runAsUser: int


class SeccompProfile(TypedDict):
    """core/v1 ``SeccompProfile``."""

    type: Literal["RuntimeDefault"]


class _PodSecurityContextRequired(TypedDict):
    runAsNonRoot: bool
    seccompProfile: SeccompProfile


class PodSecurityContext(_PodSecurityContextRequired, total=False):
    """core/v1 ``PodSecurityContext``; ``fsGroup`` for the pods that write the backup volume."""

    fsGroup: int
    fsGroupChangePolicy: Literal["OnRootMismatch", "Always"]


class _ContainerRequired(TypedDict):
    name: str
    image: str
    command: list[str]
    env: list[EnvVar]
    terminationMessagePath: str
    terminationMessagePolicy: Literal["File", "FallbackToLogsOnError"]
    securityContext: SecurityContext
    volumeMounts: list[VolumeMount]


class Container(_ContainerRequired, total=False):
    """core/v1 ``Container``; ``restartPolicy: Always`` on an init container makes it a native sidecar."""

    imagePullPolicy: str
    resources: UserObject
    workingDir: str
    restartPolicy: Literal["Always"]


class _PodSpecRequired(TypedDict):
    restartPolicy: Literal["Never"]
    containers: list[Container]
    volumes: list[Volume]
    securityContext: PodSecurityContext
    enableServiceLinks: bool


class PodSpec(_PodSpecRequired, total=False):
    """core/v1 ``PodSpec`` of a step's pod (``spec.jobTemplate`` fills the optional fields)."""

    initContainers: list[Container]
    serviceAccountName: str
    automountServiceAccountToken: bool
    nodeSelector: dict[str, str]
    tolerations: list[UserObject]
    imagePullSecrets: list[UserObject]


class PodTemplateMeta(TypedDict):
    """The pod template's meta/v1 ``ObjectMeta``: its labels."""

    labels: dict[str, str]


class PodTemplateSpec(TypedDict):
    """core/v1 ``PodTemplateSpec``."""

    metadata: PodTemplateMeta
    spec: PodSpec


class _JobSpecRequired(TypedDict):
    backoffLimit: int
    activeDeadlineSeconds: int
    template: PodTemplateSpec


class JobSpec(_JobSpecRequired, total=False):
    """batch/v1 ``JobSpec``."""

    ttlSecondsAfterFinished: int


class OwnerReference(TypedDict):
    """meta/v1 ``OwnerReference`` (the controller owner: deleting it garbage-collects the Job)."""

    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict):
    """meta/v1 ``ObjectMeta`` of a Job the operator creates."""

    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]


class Job(TypedDict):
    """batch/v1 ``Job``, ready for ``create_namespaced_job``."""

    apiVersion: Literal["batch/v1"]
    kind: Literal["Job"]
    metadata: ObjectMeta
    spec: JobSpec


Layout = tuple[list[Container], list[Container], list[Volume]]  # (initContainers, containers, volumes) of a pod
