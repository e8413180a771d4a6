"""Forward and inverse kinematics of one Piper arm of the twin (MuJoCo Jacobians).

Used by the scripted experts, by calibration (gripper poses for hand-eye) and by tests.
IK is damped least squares on the 6-D pose error of the ``{arm}_tcp`` site, clamped to the
SDK joint limits after every iteration.
"""

from __future__ import annotations

import mujoco
import numpy as np

from pushcut.spec import JOINT_LIMITS

_LO = np.array([lim[0] for lim in JOINT_LIMITS])
_HI = np.array([lim[1] for lim in JOINT_LIMITS])
HOME = np.array([0.0, 1.2, -1.1, 0.0, 0.9, 0.0])  # gripper over the table, pointing down-forward


def down_rotation(yaw: float) -> np.ndarray:
    """TCP frame pointing straight down, fingers sliding along the horizontal direction ``yaw``."""
    z = np.array([0.0, 0.0, -1.0])
    y = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


class ArmKinematics:
    """FK/IK for ``arm`` ('left' or 'right') on a private MjData of ``model``."""

    def __init__(self, model: mujoco.MjModel, arm: str):
        self.model = model
        self.data = mujoco.MjData(model)
        self.qadr = np.array([model.joint(f"{arm}_joint{i + 1}").qposadr[0] for i in range(6)])
        self.dadr = np.array([model.joint(f"{arm}_joint{i + 1}").dofadr[0] for i in range(6)])
        self.site = model.site(f"{arm}_tcp").id

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) and rotation matrix (3, 3) in the world frame."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)  # Jacobians need cdof
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def ik(
        self,
        pos: np.ndarray,
        rot: np.ndarray | None,
        q0: np.ndarray,
        iters: int = 200,
        tol: float = 1e-4,
        damping: float = 1e-3,
    ) -> tuple[np.ndarray, float]:
        """Joint angles reaching ``pos`` (and ``rot`` if given) from ``q0``; returns (q, error).

        The error is the position error in m plus 0.1 m per rad of orientation error, so a
        caller can reject unreachable targets with one threshold.
        """
        q = np.clip(np.asarray(q0, dtype=float).copy(), _LO, _HI)
        jacp = np.zeros((3, self.model.nv))
        jacr = np.zeros((3, self.model.nv))
        err_total = np.inf
        for _ in range(iters):
            cur_p, cur_r = self.fk(q)
            e_pos = pos - cur_p
            if rot is not None:
                e_rot = 0.5 * (
                    np.cross(cur_r[:, 0], rot[:, 0])
                    + np.cross(cur_r[:, 1], rot[:, 1])
                    + np.cross(cur_r[:, 2], rot[:, 2])
                )
                err = np.concatenate([e_pos, e_rot])
            else:
                e_rot = np.zeros(3)
                err = e_pos
            err_total = float(np.linalg.norm(e_pos) + 0.1 * np.linalg.norm(e_rot))
            if err_total < tol:
                break
            mujoco.mj_jacSite(self.model, self.data, jacp, jacr, self.site)
            jac = np.vstack([jacp[:, self.dadr], jacr[:, self.dadr]]) if rot is not None else jacp[:, self.dadr]
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(jac.shape[0]), err)
            step = np.linalg.norm(dq)
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, _LO, _HI)
        return q, err_total
